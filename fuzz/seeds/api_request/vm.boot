ð/api/v1/vm.boot
