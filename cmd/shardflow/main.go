// Command shardflow operates Kinesis streams from a terminal, with the
// shardflow library:
//
//	shardflow put    --stream S [--partition-key K] [--ordered] [--aggregate] [FILE...]
//	shardflow tail   --stream S [--from latest|trim-horizon|RFC3339-time] [--format text|json] [--max N]
//	shardflow relay  --from S --to S [--table T] [--start trim-horizon|latest] [--unordered] [--metrics-addr 127.0.0.1:9464]
//	shardflow status --stream S --table T [--json]
//	shardflow checkpoints --table T --stream S [--reset SHARD_ID]
//	shardflow create-stream NAME [--shards N]
//	shardflow create-table NAME
//	shardflow help [COMMAND]
//
// Credentials and region come from the default AWS chain, as for the AWS
// CLI (environment, shared config and credentials files, --profile, ...).
// --endpoint-url and --dynamodb-endpoint-url point at other endpoints, such
// as local emulators. Records go to stdout; progress, logs (--log-level,
// default warn: retried failures and calls waiting long for an answer) and
// errors to stderr.
//
// Exit status: 0 on success, and when tail or relay stopped cleanly on a
// signal; 1 on failure, including a stop while AWS calls were failing (or
// one had no answer for 5s, which is also logged at WARN), a stop before
// any read of the stream succeeded, and records left unwritten when
// --shutdown-timeout ran out; 2 on bad usage;
// 128+N when signal N arrived a second time (the process exits at once) or
// stopped put before the end of its input.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

var commands = []command{
	{"put", "write lines of stdin or files as records, through the batching producer", cmdPut},
	{"tail", "print the records of a stream as text or JSON lines, de-aggregating KPL records", cmdTail},
	{"relay", "copy a stream to another, in order per partition key, with optional DynamoDB checkpoints and leases", cmdRelay},
	{"status", "show each shard's state, lease, checkpoint and lag behind the newest record; read-only", cmdStatus},
	{"checkpoints", "list the shard owners and checkpoints in a DynamoDB table; reset one", cmdCheckpoints},
	{"create-stream", "create a stream and wait until it is ACTIVE", cmdCreateStream},
	{"create-table", "create a DynamoDB table of checkpoints and leases and wait until it is ACTIVE", cmdCreateTable},
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, "usage: shardflow <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun \"shardflow help <command>\" for a command's flags.\n")
}

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go handleSignals(sigs, cancel, os.Stderr, os.Exit)
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// handleSignals turns the first SIGINT or SIGTERM into a graceful stop (ctx
// is cancelled with an *interrupted cause, and each command bounds its stop
// with --shutdown-timeout), and the second into an immediate exit with
// status 128+signal number.
func handleSignals(sigs <-chan os.Signal, cancel context.CancelCauseFunc, stderr io.Writer, exit func(int)) {
	s := <-sigs
	fmt.Fprintf(stderr, "shardflow: %v: stopping gracefully; send it again to exit at once\n", s)
	cancel(&interrupted{sig: s, at: time.Now()})
	s = <-sigs
	fmt.Fprintf(stderr, "shardflow: %v again: exiting at once\n", s)
	exit(signalStatus(s))
}

// signalStatus is the shell's exit status of a process ended by s.
func signalStatus(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 1
}

// run executes one command and returns the process exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if name != "help" || len(args) == 1 {
			printUsage(stdout)
			return 0
		}
		if len(args) > 2 {
			fmt.Fprintf(stderr, "shardflow help: want one command, got %q\n", args[1:])
			return 2
		}
		name, args = args[1], []string{args[1], "-h"}
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == name {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "shardflow: unknown command %q\n\n", name)
		printUsage(stderr)
		return 2
	}
	err := cmd.run(ctx, args[1:], stdin, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*usageError)):
		fmt.Fprintf(stderr, "shardflow %s: %v\nRun \"shardflow help %s\" for usage.\n", name, err, name)
		return 2
	}
	fmt.Fprintf(stderr, "shardflow %s: %v\n", name, err)
	if in, ok := errors.AsType[*interrupted](err); ok {
		return signalStatus(in.sig)
	}
	return 1
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }
