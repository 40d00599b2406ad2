//! `hrl-shipper`: seals .hrl logs into recovery points, ships them to an object store,
//! restores disks from it, and offers the log tools (`log inspect|verify|apply`).

fn main() -> std::process::ExitCode {
    hrl_shipper::cli::main()
}
