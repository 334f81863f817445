"""The sinusoidal encoding family: x * scale + alpha * pe(position), the table builder and the layers."""
