"""mevos.runtime"""
