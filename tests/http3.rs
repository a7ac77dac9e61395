//! HTTP/3 tests (feature `http3`).
