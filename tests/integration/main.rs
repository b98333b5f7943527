//! Integration tests: one binary, one module per area.

mod broker;
mod cli;
mod example;
mod groups;
mod kafka;
mod kafka_admin;
mod storage_format;
mod support;
mod tidy;
