//! A writer for the Prometheus text exposition format (version 0.0.4): families with
//! `# HELP` and `# TYPE`, samples with escaped label values, histograms with cumulative
//! buckets. Just the part of the format the status page needs.

use std::fmt::Write;

use crate::stats::Histogram;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The page being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Start a family: its help line and type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A whole histogram family: `_bucket` (cumulative, `+Inf` last), `_sum`, `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let bucket = format!("{name}_bucket");
        for (bound, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &number(bound))], n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count() as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum());
        self.sample(&format!("{name}_count"), &[], h.count() as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Integers without a fraction, the rest as Rust prints them (shortest round trip).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes() {
        let mut t = Text::default();
        t.family("x_total", Kind::Counter, "Things.\nMore");
        t.sample("x_total", &[("a", "q\"\\\n"), ("b", "2")], 3.0);
        t.single("y", Kind::Gauge, "Y.", 0.25);
        assert_eq!(
            t.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\",b=\"2\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny 0.25\n"
        );
    }

    #[test]
    fn histogram_has_cumulative_buckets_sum_and_count() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let mut t = Text::default();
        t.histogram("s", "S.", &h);
        let out = t.finish();
        assert!(out.contains("# TYPE s histogram\n"));
        assert!(out.contains("s_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("s_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("s_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("s_sum 3.55\n"));
        assert!(out.contains("s_count 3\n"));
    }
}
