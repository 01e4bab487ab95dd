"""Per-system job modules and producers.  Imported in the peers' virtualenv too, so
nothing here may import forkq except ``producers.ForkqProducer`` (lazily)."""
