//! Shared state for tasks: values registered once on the worker (a database
//! pool, an HTTP client, configuration) and received by a task as a typed
//! [`State<T>`] parameter, as axum's `State` or apalis' `Data`.
//!
//! ```
//! use task_core::{task, State, TaskError};
//!
//! struct Config {
//!     greeting: String,
//! }
//!
//! #[task(name = "doc.state.greet")]
//! async fn greet(config: State<Config>, name: String) -> Result<String, TaskError> {
//!     Ok(format!("{} {name}", config.greeting))
//! }
//! ```
//!
//! The worker provides it with `WorkerBuilder::state(Config { .. })` (an
//! eager app with [`AppBuilder::state`](crate::AppBuilder::state)); callers
//! never pass it: `greet.delay("Ada".into())`. A worker refuses to start when
//! one of its tasks needs a state it was not given.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::TaskError;

/// A shared value of type `T`, registered on the worker, as a task
/// parameter. Cheap to clone (an `Arc`); derefs to `T`.
pub struct State<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        State(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&&*self.0).finish()
    }
}

/// The shared values a worker (or an eager app) provides, one per type.
#[derive(Clone, Default)]
pub struct States {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    /// No shared values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Provides `value` to the tasks that take a `State<T>` (replacing an
    /// earlier value of the same type).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.by_type.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if provided.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let value = Arc::clone(self.by_type.get(&TypeId::of::<T>())?);
        value.downcast::<T>().ok().map(State)
    }

    /// Whether a value of this type is provided.
    pub fn provides(&self, state: &StateType) -> bool {
        self.by_type.contains_key(&state.type_id())
    }
}

// A task's panic is caught around its whole run (the pipeline asserts unwind
// safety there already): what a panicking run leaves in a shared value is the
// value's own business (a `Mutex` poisons), as with any `Arc` shared across
// threads. Without these, `TaskContext`, which holds the states, would stop
// being usable under `catch_unwind`.
impl std::panic::UnwindSafe for States {}
impl std::panic::RefUnwindSafe for States {}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("provided", &self.by_type.len())
            .finish()
    }
}

/// The type of a `State<T>` parameter a task takes, recorded in its
/// registration so that a worker can check at start that it provides it.
#[derive(Clone, Copy)]
pub struct StateType {
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl StateType {
    /// The state type `T` (usable in `const` context).
    pub const fn of<T: ?Sized + 'static>() -> Self {
        Self {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }

    /// The type's [`TypeId`].
    pub fn type_id(&self) -> TypeId {
        (self.id)()
    }

    /// The type's full name, for messages.
    pub fn name(&self) -> &'static str {
        (self.name)()
    }
}

impl PartialEq for StateType {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

impl Eq for StateType {}

impl fmt::Debug for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "State<{}>", self.name())
    }
}

/// The failure of a task run without a state it takes (a worker checks at
/// start, so this is met in eager mode or a hand-built pipeline).
pub(crate) fn missing(task: &str, state: &'static str) -> TaskError {
    TaskError::new(
        "MissingState",
        format!(
            "task `{task}` takes a `State<{state}>` that was not provided: register it with \
             `WorkerBuilder::state(..)` (or `AppBuilder::state(..)` in eager mode)"
        ),
    )
}
