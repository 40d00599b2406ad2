//! `hrl-tracker`: a FUSE layer over an image directory that records every change of its disk
//! images into `.hrl` logs. See docs/tracker.md.

mod bypass;
mod cli;
mod control_server;
mod core;
mod disk;
mod fuse_adapter;
mod glob;
mod mount;
mod seal;
mod tracking;

fn main() -> std::process::ExitCode {
    cli::main()
}
