"""mevos.proto"""
