//! Scraping `/metrics` and reading values out of the Prometheus text format.

use std::collections::BTreeMap;
use std::time::Duration;

/// One scrape of a `/metrics` endpoint.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// GETs `url` (a `/metrics` endpoint) and parses it.
///
/// # Panics
/// When it cannot be fetched; a process the test expects to be up must be.
pub async fn scrape(url: &str) -> Scrape {
    match try_scrape(url).await {
        Ok(s) => s,
        Err(e) => panic!("scrape {url}: {e}"),
    }
}

/// GETs `url` and parses it.
///
/// # Errors
/// The endpoint cannot be reached or does not answer 200.
pub async fn try_scrape(url: &str) -> Result<Scrape, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    Ok(Scrape::parse(&r.text().await.map_err(|e| e.to_string())?))
}

impl Scrape {
    /// Parses the text format (`name{k="v",…} value` lines; comments skipped).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// The sum of every series of `name` whose labels include `labels`
    /// (0 when there is none: a counter never incremented may be absent).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// [`Scrape::sum`] as an integer, for counters.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels).round() as u64
    }

    /// Every value of label `label` among the series of `name`, with its sum.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            if let Some(v) = s.labels.get(label) {
                *out.entry(v.clone()).or_insert(0) += s.value.round() as u64;
            }
        }
        out
    }

    /// The raw text, for messages.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_matching_a_label_subset() {
        let s = Scrape::parse(
            "# HELP x y\n\
             sluice_worker_entries_total{group=\"cpu\",outcome=\"replied\"} 3\n\
             sluice_worker_entries_total{group=\"io\",outcome=\"replied\"} 4\n\
             sluice_worker_entries_total{group=\"io\",outcome=\"failed\"} 1\n\
             sluice_up 1\n\
             # EOF\n",
        );
        assert_eq!(
            s.count("sluice_worker_entries_total", &[("outcome", "replied")]),
            7
        );
        assert_eq!(s.count("sluice_worker_entries_total", &[]), 8);
        assert_eq!(s.count("sluice_up", &[]), 1);
        assert_eq!(s.count("absent_total", &[]), 0);
        assert_eq!(
            s.by_label("sluice_worker_entries_total", "outcome")["replied"],
            7
        );
    }

    #[test]
    fn label_values_may_hold_escaped_quotes_and_commas() {
        let s = Scrape::parse("m{a=\"x\\\"y,z\",b=\"2\"} 5\n");
        assert_eq!(s.count("m", &[("a", "x\"y,z"), ("b", "2")]), 5);
    }
}
