#![deny(warnings)]

use serde::{Deserialize, Serialize};
use task_core::{task, TaskError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub order: u64,
    pub count: usize,
}

#[task]
pub async fn process(order: Order) -> Result<Receipt, TaskError> {
    Ok(Receipt {
        order: order.id,
        count: order.items.len(),
    })
}

fn main() {
    let order = Order {
        id: 7,
        items: vec!["tea".to_owned()],
    };
    let _: task_core::Signature<Receipt> = process.s(order.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        runtime.block_on(process.run(order)),
        Ok(Receipt { order: 7, count: 1 })
    );
}
