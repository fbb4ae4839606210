# The installed package's __init__.py is the one rosidl generates (CMakeLists.txt excludes this file), so this
# line only matters when the source tree shadows the colcon install (e.g. `python` started in the repository
# root): it lets `scanssc_ros.msg` still be found in the installed copy further down sys.path.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
