"""Formula-driven datasets: FractalDB / 2D-OFDB category search, rendering and datasets."""
