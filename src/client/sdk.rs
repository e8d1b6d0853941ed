//! Kinesis over aws-sdk-kinesis (filled in by the client work).
