use task_core::task;

#[task]
async fn by_ref(ref name: String) {
    println!("{name}");
}

fn main() {}
