use task_core::task;

#[task(autoretry_for = [std::io::NoSuchError, MissingError])]
async fn fetch() {}

fn main() {}
