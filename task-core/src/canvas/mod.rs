//! Canvas built in Rust, as Celery's wire format has it, so Rust and Python
//! workers run it: [`chain`] (steps run one after the other, each given the
//! previous result, typed at compile time), [`group`] (members sent at
//! once, a typed, ordered [`GroupResult`]) and [`chord`] (a group whose values, in order, go to a
//! body once all are in; joined in the result backend as Celery's Redis
//! backend joins chords).

mod chain;
mod chord;
mod group;
mod replacement;
mod stored;

pub use chain::{chain, Chain, ChainStep, ChainToGroup, Follows, InvalidSignature, Partial};
pub use chord::{chord, start_join_on_broker, Chord};
pub use group::{group, Group, GroupResult};
pub(crate) use replacement::accumulate;
pub use replacement::Replacement;
pub use stored::Canvas;
