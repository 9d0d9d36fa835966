//! End-to-end tests of Ambit in network namespaces, and their harness.
//!
//! Empty until there is a node agent to test: the wire layer's tests live beside it in
//! `proto/tests/`. The ztunnel issue brings the namespace harness and the first end-to-end tests.
