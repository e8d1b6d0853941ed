//! `kpl sim`: embedded ferrokinesis with shard limits and a fault layer.
