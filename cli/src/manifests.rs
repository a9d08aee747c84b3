//! Local parsing of manifest files, so a bad file fails before anything is sent, with the
//! same located causes (file:line:col, field path) the controller would give.

use topo_schema::Resource;
use topo_schema::api::{ApiError, SourceFile};

/// Every object of every file, in order; or every error of every file.
pub fn parse(files: &[SourceFile]) -> Result<Vec<Resource>, ApiError> {
    topo_schema::manifest::parse_files(files)
        .map(|docs| docs.into_iter().map(|d| d.resource).collect())
        .map_err(ApiError::invalid)
}
