//! Integration tests: one binary, one module per area.

mod broker;
mod cli;
mod storage_format;
mod support;
mod tidy;
