//! Integration tests: one binary, one module per area.

mod broker;
mod cli;
mod groups;
mod storage_format;
mod support;
mod tidy;
