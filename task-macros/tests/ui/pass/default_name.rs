#![deny(warnings)]

use task_core::{task, Task};

mod emails {
    use task_core::task;

    #[task]
    pub async fn send() {}

    // A raw identifier is named without its `r#`.
    #[task]
    pub async fn r#move() {}
}

#[task]
async fn top_level() {}

fn main() {
    assert_eq!(<emails::send as Task>::NAME, concat!(module_path!(), "::emails::send"));
    assert_eq!(<emails::r#move as Task>::NAME, concat!(module_path!(), "::emails::move"));
    assert_eq!(<top_level as Task>::NAME, concat!(module_path!(), "::top_level"));
}
