use task_core::task;

// Every problem is reported at once.
#[task(nmae = "x", queue = 1, track_started, track_started)]
async unsafe fn everything<T>(&self, (_a, _b): (i64, i64), _name: &str, _value: T) {}

fn main() {}
