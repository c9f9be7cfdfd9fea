use task_core::task;

#[task]
struct Add {
    x: i64,
    y: i64,
}

fn main() {
    let add = Add { x: 1, y: 2 };
    println!("{}", add.x + add.y);
}
