"""mevos.eval"""
