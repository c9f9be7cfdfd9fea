use task_core::task;

struct Mailer;

impl Mailer {
    #[task]
    async fn send(&self, _to: String) {}
}

fn main() {}
