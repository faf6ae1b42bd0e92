"""mevos.kernels"""
