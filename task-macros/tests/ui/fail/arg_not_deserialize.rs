use task_core::task;

struct Order {
    id: u64,
}

#[task]
async fn process(order: Order) {
    println!("{}", order.id);
}

fn main() {}
