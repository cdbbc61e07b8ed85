// Command shardflow operates Kinesis streams from a terminal, with the
// shardflow library:
//
//	shardflow put    --stream S [--partition-key K] [--ordered] [--aggregate] [FILE...]
//	shardflow tail   --stream S [--from latest|trim-horizon|RFC3339-time] [--format text|json] [--max N]
//	shardflow relay  --from S --to S [--table T] [--ordered]
//	shardflow checkpoints --table T --stream S [--reset SHARD_ID]
//
// Credentials and region come from the default AWS chain, as for the AWS
// CLI (environment, shared config and credentials files, --profile, ...).
// --endpoint-url and --dynamodb-endpoint-url point at other endpoints, such
// as local emulators. Progress and rates go to stderr; records to stdout.
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
)

const usage = `usage: shardflow <command> [flags]

commands:
  put          write lines of stdin or files as records, through the batching producer
  tail         print the records of a stream as text or JSON lines, de-aggregating KPL records
  relay        copy a stream to another, with optional DynamoDB checkpoints and leases
  checkpoints  list the shard owners and checkpoints in a DynamoDB table; reset one

Run "shardflow <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code: 0 on success,
// 1 on failure, 2 on bad usage.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string, io.Reader, io.Writer, io.Writer) error{
		"put":         cmdPut,
		"tail":        cmdTail,
		"relay":       cmdRelay,
		"checkpoints": cmdCheckpoints,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "shardflow: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdin, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*usageError)):
		fmt.Fprintf(stderr, "shardflow %s: %v\n", args[0], err)
		return 2
	}
	fmt.Fprintf(stderr, "shardflow %s: %v\n", args[0], err)
	return 1
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }
