#![deny(warnings)]

use task_core::{task, TaskError};

/// Doc comments, lints and `#[cfg]` on the function carry over; attributes
/// meant for a function go on `run`.
#[task]
#[allow(clippy::too_many_arguments)]
#[inline]
#[must_use]
#[cfg_attr(all(), doc = "More docs.")]
#[cfg(all())]
pub fn documented(
    #[allow(unused_variables)] unused: u8,
) -> Result<(), TaskError> {
    Ok(())
}

#[task]
#[cfg(any())]
pub fn compiled_out(_x: NoSuchType) {}

/// A deprecated task still compiles without warnings where it is defined.
#[task]
#[deprecated = "use `documented`"]
pub async fn old() {}

/// Visibility carries over to the struct and its methods.
mod inner {
    use task_core::task;

    #[task]
    pub(crate) async fn crate_visible() {}

    // Private, never called here: `s` and `delay` do not warn as dead code.
    #[task]
    async fn private() {}
}

/// Parameters named like the handler's own variables, or like a keyword.
#[task]
async fn echo(text: String, args: u8, arg0: u8, r#type: u8) -> Result<String, TaskError> {
    Ok(format!("{text}{args}{arg0}{type}"))
}

/// A task named like common helper names.
#[task]
async fn handler(x: u8) -> Result<u8, TaskError> {
    Ok(x)
}

fn main() {
    let _ = documented.run(1);
    let _ = inner::crate_visible.s();
    let _ = echo.s(String::new(), 1, 2, 3);
    let _ = handler.s(1);
}
