//! `topoctl graph [-o dot|svg] [-l SELECTOR]`: fetches every kind and prints the picture of
//! [`crate::graph`]. A selector narrows the containers and links; nodes, networks and
//! tunnels are always drawn, since they are what the selected objects hang on.

use topo_schema::Kind;

use super::{CliError, Ctx, emit};
use crate::args::{self, GraphFormat};
use crate::graph::{self, Topology};

pub(crate) async fn graph(ctx: &Ctx, a: args::GraphArgs) -> Result<i32, CliError> {
    let client = ctx.client()?;
    let mut topology = Topology::default();
    for kind in Kind::ALL {
        let selector = match kind {
            Kind::Container | Kind::Link => a.selector.as_deref(),
            _ => None,
        };
        topology
            .objects
            .extend(client.list(kind, selector).await?.items);
    }
    let dot = graph::dot(&topology);
    match a.output {
        GraphFormat::Dot => emit(&dot)?,
        GraphFormat::Svg => emit(&graph::svg(&dot)?)?,
    }
    Ok(0)
}
