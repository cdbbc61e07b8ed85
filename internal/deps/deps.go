package deps

import (
	_ "github.com/aws/aws-sdk-go-v2/aws"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/credentials"
	_ "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	_ "github.com/aws/aws-sdk-go-v2/service/kinesis"
	_ "github.com/cenkalti/backoff/v4"
	_ "github.com/google/go-cmp/cmp"
	_ "golang.org/x/sync/errgroup"
)
