#![deny(warnings)]

//! Every accepted error type, async and blocking.

use std::error::Error;

use task_core::{task, CeleryException, Signature, TaskError};

#[task]
async fn with_anyhow(x: i64) -> anyhow::Result<i64> {
    anyhow::ensure!(x > 0, "x must be positive");
    Ok(x)
}

#[task]
fn with_anyhow_blocking(x: i64) -> anyhow::Result<i64> {
    Ok(x)
}

#[task]
async fn with_boxed(x: String) -> Result<i64, Box<dyn Error + Send + Sync>> {
    Ok(x.parse::<i64>()?)
}

#[task]
fn with_boxed_blocking(x: String) -> Result<i64, Box<dyn Error + Send + Sync>> {
    Ok(x.parse::<i64>()?)
}

#[task]
async fn with_string(x: i64) -> Result<i64, String> {
    if x < 0 {
        return Err(format!("{x} is negative"));
    }
    Ok(x)
}

#[task]
fn with_str_blocking(x: i64) -> Result<i64, &'static str> {
    if x < 0 {
        return Err("negative");
    }
    Ok(x)
}

#[task]
async fn with_std(x: String) -> Result<i64, std::num::ParseIntError> {
    x.parse()
}

#[task]
async fn with_io(path: String) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

#[task]
async fn with_task_error(x: i64) -> Result<i64, TaskError> {
    Ok(x)
}

#[derive(Debug)]
enum MyError {
    NotFound,
    Invalid,
}

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MyError::NotFound => "not found",
            MyError::Invalid => "invalid",
        })
    }
}

impl Error for MyError {}

impl CeleryException for MyError {
    fn exc_type(&self) -> &str {
        match self {
            MyError::NotFound => "KeyError",
            MyError::Invalid => "ValueError",
        }
    }
}

#[task]
async fn with_exception(x: i64) -> Result<i64, MyError> {
    match x {
        0 => Err(MyError::NotFound),
        x if x < 0 => Err(MyError::Invalid),
        x => Ok(x),
    }
}

#[task]
fn with_exception_blocking(x: i64) -> Result<i64, MyError> {
    Ok(x)
}

fn main() {
    let _: Signature<i64> = with_anyhow.s(1);
    let _: Signature<i64> = with_anyhow_blocking.s(1);
    let _: Signature<i64> = with_boxed.s("1".into());
    let _: Signature<i64> = with_boxed_blocking.s("1".into());
    let _: Signature<i64> = with_string.s(1);
    let _: Signature<i64> = with_str_blocking.s(1);
    let _: Signature<i64> = with_std.s("1".into());
    let _: Signature<String> = with_io.s("/dev/null".into());
    let _: Signature<i64> = with_task_error.s(1);
    let _: Signature<i64> = with_exception.s(1);
    let _: Signature<i64> = with_exception_blocking.s(1);
}
