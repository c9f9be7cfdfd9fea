//! A worker for the example tasks, with the standard worker command line:
//!
//! ```text
//! cargo run --example worker -- -Q celery -c 4
//! ```
//!
//! A worker for your own tasks is the same three lines with your crate.

// Link the crate that defines the tasks: `inventory` registers only linked code.
use task_examples as _;

fn main() -> std::process::ExitCode {
    task_worker::cli::main_for(task_worker::binary_info!())
}
