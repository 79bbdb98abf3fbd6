//! Progress bars for vault commands: drawn with indicatif on a terminal, silent otherwise.
use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_vault::Progress;

/// A progress sink that draws a bar only when stderr is a terminal and output is not JSON.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn phase(&self, name: &str, total_bytes: Option<u64>) {
        if let Some(b) = &self.bar {
            b.set_length(total_bytes.unwrap_or(0));
            b.set_position(0);
            b.set_message(name.to_string());
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
}

impl Bar {
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn bar(json: bool) -> Arc<Bar> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    Arc::new(Bar { bar })
}
