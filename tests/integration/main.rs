//! Integration tests.

mod storage_format;
mod tidy;
