use task_core::task;

#[task(rate_limit = "10/d")]
async fn per_day() {}

#[task(rate_limit = "0/s")]
async fn zero() {}

#[task(rate_limit = "ten/m")]
async fn words() {}

#[task(rate_limit = "")]
async fn empty() {}

#[task(rate_limit = 10)]
async fn not_a_string() {}

fn main() {}
