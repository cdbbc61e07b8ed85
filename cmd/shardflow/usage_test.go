package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHelpPrintsUsageAndExitsZero(t *testing.T) {
	tests := []struct {
		args []string
		want []string // in stdout
	}{
		{[]string{"help"}, []string{"usage: shardflow <command>", "create-stream", "create-table"}},
		{[]string{"-h"}, []string{"usage: shardflow <command>"}},
		{[]string{"--help"}, []string{"usage: shardflow <command>"}},
		{[]string{"help", "put"}, []string{"usage: shardflow put --stream S", "-partition-key", "-shutdown-timeout"}},
		{[]string{"put", "--help"}, []string{"usage: shardflow put --stream S"}},
		{[]string{"relay", "-h"}, []string{"usage: shardflow relay", "-unordered", "-table", "-metrics-addr", "127.0.0.1:9464", "no authentication",
			"-efo", "enhanced fan-out", "kept at exit", "per consumer-shard hour"}},
		{[]string{"tail", "-h"}, []string{"usage: shardflow tail", "-efo", "enhanced fan-out", "deregistered at exit if tail registered it"}},
		{[]string{"help", "create-stream"}, []string{"usage: shardflow create-stream NAME", "-shards"}},
		{[]string{"help", "status"}, []string{"usage: shardflow status --stream S --table T", "-json", "millis_behind_latest",
			"-lease-duration", "(default 8s)", "EXPIRES", "expires_at", "approximate"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(t.Context(), t, "", tc.args...)
			if code != 0 {
				t.Errorf("exit %d; want 0; stderr:\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestEachCommandsUsageListsOnlyItsFlags(t *testing.T) {
	awsK := []string{"endpoint-url", "profile", "region"}
	awsD := []string{"dynamodb-endpoint-url", "profile", "region"}
	awsKD := []string{"dynamodb-endpoint-url", "endpoint-url", "profile", "region"}
	tests := []struct {
		cmd  string
		want []string
	}{
		{"put", append([]string{"aggregate", "log-level", "ordered", "partition-key", "shutdown-timeout", "stream"}, awsK...)},
		{"tail", append([]string{"efo", "format", "from", "log-level", "max", "shutdown-timeout", "stream"}, awsK...)},
		{"relay", append([]string{"efo", "from", "log-level", "metrics-addr", "owner", "shutdown-timeout", "start", "table", "to", "unordered"}, awsKD...)},
		{"checkpoints", append([]string{"log-level", "reset", "stream", "table"}, awsKD...)},
		{"status", append([]string{"json", "lease-duration", "log-level", "stream", "table"}, awsKD...)},
		{"create-stream", append([]string{"shards", "wait"}, awsK...)},
		{"create-table", append([]string{"log-level"}, awsD...)},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			code, stdout, _ := runCmd(t.Context(), t, "", "help", tc.cmd)
			if code != 0 {
				t.Fatalf("exit %d", code)
			}
			var got []string
			for l := range strings.Lines(stdout) {
				if name, ok := strings.CutPrefix(l, "  -"); ok {
					got = append(got, strings.Fields(name)[0])
				}
			}
			slices.Sort(got)
			slices.Sort(tc.want)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("flags in the usage of %s (-want +got):\n%s\n%s", tc.cmd, diff, stdout)
			}
		})
	}
}

func TestUsageErrorsExitTwoWithTheReason(t *testing.T) {
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{nil, "usage: shardflow <command>"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"help", "nope"}, `unknown command "nope"`},
		{[]string{"put"}, "shardflow put: --stream is required"},
		{[]string{"put", "--stream", "s", "--shutdown-timeout", "0s"}, "--shutdown-timeout 0s"},
		{[]string{"put", "--stream", "s", "--dynamodb-endpoint-url", "http://127.0.0.1:1"}, "flag provided but not defined: -dynamodb-endpoint-url"},
		{[]string{"tail", "--stream", "s", "--from", "yesterday"}, `--from "yesterday"`},
		{[]string{"tail", "--stream", "s", "--max", "-3"}, "--max -3"},
		{[]string{"tail", "--stream", "s", "extra"}, `unexpected argument "extra"`},
		{[]string{"tail", "--stream", "s", "--log-level", "loud"}, "want debug, info, warn or error"},
		{[]string{"relay", "--from", "a"}, "--from and --to are required"},
		{[]string{"relay", "--from", "x", "--to", "x"}, `--from and --to are the same stream "x"`},
		{[]string{"relay", "--from", "a,x", "--to", "x"}, `--from and --to are the same stream "x"`},
		{[]string{"relay", "--from", "a,,b", "--to", "x"}, `--from "a,,b": an empty stream name`},
		{[]string{"relay", "--from", "a,b,a", "--to", "x"}, `--from names stream "a" twice`},
		{[]string{"relay", "--from", "a", "--to", "x", "--owner", "pod-1"}, `--owner "pod-1" needs --table`},
		{[]string{"relay", "--from", "a", "--to", "b", "stray"}, `unexpected argument "stray"`},
		{[]string{"relay", "--from", "a", "--to", "b", "--ordered"}, "flag provided but not defined: -ordered"},
		{[]string{"tail", "--stream", "s", "--efo", "my viewer"}, `--efo "my viewer": "my viewer" is not 1 to 128 letters`},
		{[]string{"relay", "--from", "a", "--to", "b", "--efo", strings.Repeat("x", 129)}, `--efo "xxx`},
		{[]string{"checkpoints", "--table", "t", "--stream", "s", "x"}, `unexpected argument "x"`},
		{[]string{"status", "--stream", "s"}, "--table and --stream are required"},
		{[]string{"status", "--table", "t", "--stream", "s", "x"}, `unexpected argument "x"`},
		{[]string{"status", "--table", "t", "--stream", "s", "--lease-duration", "0s"}, "--lease-duration 0s: want a positive duration"},
		{[]string{"create-stream"}, "want one stream name"},
		{[]string{"create-stream", "a", "b"}, "want one stream name"},
		{[]string{"create-stream", "a", "--shards", "0"}, "--shards 0"},
		{[]string{"create-table"}, "want one table name"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, stderr := runCmd(t.Context(), t, "", tc.args...)
			if code != 2 {
				t.Errorf("exit %d; want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr)
			}
		})
	}
}
