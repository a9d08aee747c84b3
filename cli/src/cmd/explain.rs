//! `topoctl explain KIND[.FIELD...]`: the rendering is [`crate::explain`]'s; this prints it.

use super::{CliError, emit};
use crate::args;

pub(crate) fn explain(a: args::ExplainArgs) -> Result<i32, CliError> {
    emit(&crate::explain::explain(&a.path, a.recursive)?)?;
    Ok(0)
}
