// Package kplpb is the KPL aggregated record format as generated protobuf
// messages: what the benchmark's peer marshals, as a8m/kinesis-producer
// does. Regenerate with protoc and protoc-gen-go on PATH:
//
//	go generate ./kplpb
package kplpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative kpl.proto
