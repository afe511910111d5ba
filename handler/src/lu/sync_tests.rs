//! Tests of the sync layer: filled below.
