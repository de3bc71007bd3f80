module cellstack.dev/examples/go-orders

go 1.22
