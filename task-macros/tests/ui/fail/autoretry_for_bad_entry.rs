use task_core::task;

#[task(autoretry_for = ["IoError", 42, Some("x"), <u8 as Default>::X, "", "std::io::Error"])]
async fn entries() {}

// Matched by name: both paths are the name `Error`.
#[task(autoretry_for = [std::io::Error, std::fmt::Error, "IoError", "IoError"])]
async fn duplicates() {}

fn main() {}
