//! `hrl-tracker`: see the library, [`hrl_tracker`].

fn main() -> std::process::ExitCode {
    hrl_tracker::cli::main()
}
