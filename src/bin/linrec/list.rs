//! `linrec list`.

use linrec::catalogue::BUILTINS;

pub fn run() {
    for b in BUILTINS {
        let spec = b.spec();
        let name = if b.aliases.is_empty() {
            b.name.to_string()
        } else {
            format!("{} ({})", b.name, b.aliases.join(", "))
        };
        println!("{name:<24}{}", spec.recurrence_text());
        println!("{:<24}fla: {}", "", b.fla);
    }
}
