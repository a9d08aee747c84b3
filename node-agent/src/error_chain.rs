//! One way to print an error for people: the error with its sources, `: `-joined. Backend
//! errors keep their details in their sources, and logs, reports and events all want them.

/// The error with its sources, `: `-joined; a source whose text is already in the line (an
/// error that prints its source itself) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
