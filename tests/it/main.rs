//! The integration tests, one module per subject, compiled as one test binary (`it`) so
//! that `common` and `sdk_support` are built and linked once rather than once per file.
//! Every test starts real node processes (`common::Tree`) on loopback.

mod common;
mod sdk_support;

mod alerts;
mod broker;
mod browser;
mod cli;
mod console;
mod custody;
mod data_dir;
mod deadletters;
mod devices;
mod file_store_s3;
mod file_transfer;
mod files;
mod hostile;
mod http;
mod http_limits;
mod http_links;
mod link_health;
mod links;
mod ops_metrics;
mod package;
mod priority;
mod push;
mod receipts;
mod routing;
mod schemathesis;
mod sdk;
mod sdk_http;
mod sdk_recovery;
mod security;
mod service;
mod services;
mod tokens;
mod trust;
