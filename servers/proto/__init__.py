"""rtbench.v1 protobuf and gRPC modules, generated from rtbench.proto (`make proto`)."""
