//! `astramq-proxy` as a library: the parts of the proxy that are pure
//! enough to be driven from outside the binary (the fuzz targets in
//! `fuzz/`). The binary (`main.rs`) uses them from here.

pub mod connect;
