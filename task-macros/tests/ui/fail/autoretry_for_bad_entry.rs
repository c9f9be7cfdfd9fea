use task_core::task;

#[task(autoretry_for = ["IoError", 42, Some("x"), <u8 as Default>::X, "", "std::io::Error"])]
async fn entries() {}

// Paths are types (two types named `Error` are fine); each entry once.
#[task(autoretry_for = [std::io::Error, std::fmt::Error, std::io::Error, "IoError", "IoError"])]
async fn duplicates() {}

// A path entry must be an error type.
#[task(autoretry_for = [String])]
async fn not_an_error() {}

fn main() {}
