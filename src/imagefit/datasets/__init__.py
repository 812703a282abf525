"""Getting, making and checking datasets: downloads, archives, CIFAR-10, digits, fractals, verify."""
