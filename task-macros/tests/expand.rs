//! What `#[task]` generates, checked at run time: the struct's methods, the
//! `Task` impl, and the handler registered in the global registry.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use task_core::{
    task, Error, ErrorType, RateLimit, Registry, RetryPolicy, Task, TaskArgs, TaskError,
    TaskOptions,
};

/// Adds.
#[task(name = "expand.add")]
pub async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

/// Multiplies, on the blocking pool.
#[task(name = "expand.mul", queue = "cpu", track_started)]
fn mul(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x * y)
}

/// Reports the thread it runs on.
#[task(name = "expand.thread")]
fn thread() -> Result<String, TaskError> {
    Ok(format!("{:?}", std::thread::current().id()))
}

/// Named after its module.
#[task]
async fn default_name() {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: i64,
}

/// Takes every kind of argument: `mut`, optional, a struct, a raw name, a
/// parameter named like the handler's own variables.
#[task(name = "expand.mixed")]
async fn mixed(
    mut count: u32,
    label: Option<String>,
    point: Point,
    r#type: String,
    args: Vec<i64>,
) -> Result<String, TaskError> {
    count += 1;
    Ok(format!(
        "{count} {} {},{} {type} {}",
        label.unwrap_or_default(),
        point.x,
        point.y,
        args.len()
    ))
}

/// Fails when asked to.
#[task(name = "expand.fails")]
async fn fails(fail: bool) -> Result<(), std::io::Error> {
    if fail {
        Err(std::io::Error::other("asked to fail"))
    } else {
        Ok(())
    }
}

/// Declares every option.
#[task(
    name = "expand.fetch",
    queue = "io",
    track_started,
    early_ack,
    time_limit = 30,
    soft_time_limit = 2.5,
    max_retries = 5,
    default_retry_delay = 10,
    retry_backoff = 0.5,
    retry_backoff_max = 120,
    retry_jitter = false,
    autoretry_for = ["IoError", "TimeoutError", std::num::ParseIntError],
    rate_limit = "10/s"
)]
async fn fetch(url: String) -> Result<String, TaskError> {
    Ok(url)
}

/// Unlimited retries with the default backoff, per hour.
#[task(name = "expand.patient", max_retries = None, retry_backoff, rate_limit = "3/h")]
fn patient() {}

/// Panics on the blocking pool.
#[task(name = "expand.panics")]
fn panics() {
    panic!("boom");
}

fn raw(json: serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&json).expect("JSON values encode")
}

/// Runs the registered handler of `name` on these arguments, as a worker does.
async fn call(
    name: &str,
    args: Vec<serde_json::Value>,
    kwargs: Vec<(&str, serde_json::Value)>,
) -> Result<serde_json::Value, TaskError> {
    let registry = Registry::global().expect("no duplicate task names");
    let registration = registry.get(name).expect("the task is registered");
    let args = TaskArgs::new(
        registration.name,
        args.into_iter().map(raw).collect(),
        kwargs
            .into_iter()
            .map(|(key, value)| (key.to_owned(), raw(value)))
            .collect(),
    );
    let encoded = (registration.handler)(args).await?;
    Ok(serde_json::from_str(encoded.get()).expect("the handler returns JSON"))
}

#[tokio::test]
async fn run_calls_the_body_in_process() {
    assert_eq!(add.run(2, 3).await, Ok(5));
    assert_eq!(mul.run(2, 3), Ok(6));
    default_name.run().await;
}

#[test]
fn task_impl_describes_the_task() {
    assert_eq!(<add as Task>::NAME, "expand.add");
    assert_eq!(<add as Task>::PARAMS, ["x", "y"]);
    assert_eq!(<add as Task>::OPTIONS, TaskOptions::DEFAULT);

    let mul_options = <mul as Task>::OPTIONS;
    assert_eq!(mul_options.queue, Some("cpu"));
    assert!(mul_options.track_started);
    assert!(mul_options.blocking);

    assert_eq!(
        <mixed as Task>::PARAMS,
        ["count", "label", "point", "type", "args"]
    );
}

const PARSE_INT_ERROR: &[ErrorType] = &[ErrorType::of::<std::num::ParseIntError>()];

#[test]
fn options_keys_fill_the_task_options() {
    let options = <fetch as Task>::OPTIONS;
    assert_eq!(options.queue, Some("io"));
    assert!(options.track_started);
    assert!(!options.blocking);
    assert!(options.early_ack);
    assert_eq!(options.time_limit, Some(Duration::from_secs(30)));
    assert_eq!(options.soft_time_limit, Some(Duration::from_millis(2500)));
    assert_eq!(options.retry.max_retries, Some(5));
    assert_eq!(options.retry.default_delay, Duration::from_secs(10));
    assert_eq!(options.retry.backoff, Some(Duration::from_millis(500)));
    assert_eq!(options.retry.backoff_max, Duration::from_secs(120));
    assert!(!options.retry.jitter);
    assert_eq!(options.retry.autoretry_for, ["IoError", "TimeoutError"]);
    assert_eq!(
        options.retry.autoretry_types,
        [ErrorType::of::<std::num::ParseIntError>()]
    );
    assert_eq!(
        options.rate_limit,
        Some(RateLimit::new(10, Duration::from_secs(1)))
    );
    assert_eq!(
        options,
        TaskOptions::DEFAULT
            .with_queue("io")
            .with_track_started(true)
            .with_early_ack(true)
            .with_time_limit_ms(30_000)
            .with_soft_time_limit_ms(2_500)
            .with_retry(
                RetryPolicy::DEFAULT
                    .with_max_retries(Some(5))
                    .with_default_delay_ms(10_000)
                    .with_backoff_ms(Some(500))
                    .with_backoff_max_ms(120_000)
                    .with_jitter(false)
                    .with_autoretry_for(&["IoError", "TimeoutError"])
                    .with_autoretry_types(PARSE_INT_ERROR)
            )
            .with_rate_limit(RateLimit::new(10, Duration::from_secs(1)))
    );

    // A path entry matches the type itself, a string entry the name.
    let parse_error: TaskError = "x".parse::<i64>().unwrap_err().into();
    assert!(options.retry.retries_automatically(&parse_error));
    let float_error: TaskError = "x".parse::<f64>().unwrap_err().into();
    assert!(!options.retry.retries_automatically(&float_error));
    assert!(!options
        .retry
        .retries_automatically(&TaskError::new("ParseIntError", "by name only")));
    assert!(options
        .retry
        .retries_automatically(&TaskError::new("TimeoutError", "slow")));
    assert!(!options
        .retry
        .retries_automatically(&TaskError::new("ValueError", "v")));
    // Backoff doubles from the factor, without jitter.
    assert_eq!(options.retry.delay(2, 0.5), Duration::from_secs(2));

    let patient_options = <patient as Task>::OPTIONS;
    assert_eq!(patient_options.retry.max_retries, None);
    assert_eq!(patient_options.retry.backoff, Some(Duration::from_secs(1)));
    assert_eq!(
        patient_options.rate_limit,
        Some(RateLimit::new(3, Duration::from_secs(3600)))
    );
    assert_eq!(
        patient_options.retry,
        RetryPolicy::DEFAULT
            .with_max_retries(None)
            .with_backoff_ms(Some(1000))
    );

    let registry = Registry::global().expect("no duplicate task names");
    let registration = registry.get("expand.fetch").expect("registered");
    assert_eq!(registration.options, options);
}

#[test]
fn default_name_is_the_function_path() {
    assert_eq!(
        <default_name as Task>::NAME,
        concat!(module_path!(), "::default_name")
    );
    assert_eq!(<default_name as Task>::NAME, "expand::default_name");
}

#[test]
fn registration_matches_the_task_impl() {
    let registry = Registry::global().expect("no duplicate task names");
    let registration = registry.get("expand.mul").expect("registered");
    assert_eq!(registration.params, <mul as Task>::PARAMS);
    assert_eq!(registration.options, <mul as Task>::OPTIONS);
    assert!(registry.get(<default_name as Task>::NAME).is_some());
}

#[test]
fn s_builds_a_call_with_the_task_defaults() {
    let signature = mul.s(2, 3);
    assert_eq!(signature.name(), "expand.mul");
    assert_eq!(signature.options().queue.as_deref(), Some("cpu"));
    assert_eq!(add.s(2, 3).options().queue, None);
}

#[tokio::test]
async fn delay_publishes_through_the_default_app() {
    // No app is connected in this test binary.
    match add.delay(2, 3).await {
        Err(Error::NoDefaultApp) => {}
        other => panic!("expected NoDefaultApp, got {other:?}"),
    }
}

#[tokio::test]
async fn handler_decodes_positional_and_keyword_arguments() {
    assert_eq!(
        call("expand.add", vec![json!(2), json!(3)], vec![]).await,
        Ok(json!(5))
    );
    assert_eq!(
        call("expand.add", vec![json!(2)], vec![("y", json!(40))]).await,
        Ok(json!(42))
    );
    assert_eq!(
        call("expand.add", vec![], vec![("y", json!(1)), ("x", json!(1))]).await,
        Ok(json!(2))
    );
    assert_eq!(
        call(
            "expand.mixed",
            vec![json!(1)],
            vec![
                ("point", json!({"x": 3, "y": 4})),
                ("type", json!("t")),
                ("args", json!([1, 2])),
            ],
        )
        .await,
        Ok(json!("2  3,4 t 2"))
    );
}

#[tokio::test]
async fn handler_reports_bad_arguments_like_python() {
    let error = call("expand.add", vec![json!(2)], vec![])
        .await
        .unwrap_err();
    assert_eq!(error.exc_type(), "TypeError");
    assert_eq!(
        error.message(),
        "expand.add() missing required argument `y`"
    );

    let error = call("expand.add", vec![json!(1), json!(2), json!(3)], vec![])
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "expand.add() takes 2 positional arguments but 3 were given"
    );

    let error = call(
        "expand.add",
        vec![json!(1), json!(2)],
        vec![("z", json!(3))],
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.message(),
        "expand.add() got an unexpected keyword argument `z`"
    );
}

#[tokio::test]
async fn handler_encodes_unit_and_errors() {
    let name = <default_name as Task>::NAME;
    assert_eq!(call(name, vec![], vec![]).await, Ok(json!(null)));
    assert_eq!(
        call("expand.fails", vec![json!(false)], vec![]).await,
        Ok(json!(null))
    );
    let error = call("expand.fails", vec![json!(true)], vec![])
        .await
        .unwrap_err();
    assert_eq!(error.message(), "asked to fail");
}

#[tokio::test]
async fn blocking_tasks_run_on_the_blocking_pool() {
    // This runtime has a single thread, the test's: the body must run elsewhere.
    let here = format!("{:?}", std::thread::current().id());
    assert_eq!(thread.run(), Ok(here.clone()));
    let there = call("expand.thread", vec![], vec![]).await;
    assert!(
        matches!(&there, Ok(serde_json::Value::String(id)) if *id != here),
        "{there:?}"
    );

    assert_eq!(
        call("expand.mul", vec![json!(6), json!(7)], vec![]).await,
        Ok(json!(42))
    );
    let error = call("expand.panics", vec![], vec![]).await.unwrap_err();
    assert!(error.message().contains("boom"), "{error:?}");
}

#[tokio::test]
async fn futures_are_static_and_send() {
    // The unit struct is a constant, so `&add` is `'static`: the futures of
    // `run` and `delay` can be spawned.
    let sum = tokio::spawn(add.run(2, 3)).await.expect("no panic");
    assert_eq!(sum, Ok(5));
    let sent = tokio::spawn(add.delay(2, 3)).await.expect("no panic");
    assert!(matches!(sent, Err(Error::NoDefaultApp)));
}
